"""boto3 against the control plane: functions, code and configuration
updates, reserved and provisioned concurrency, layers, account settings."""
import json
import time

from clients import ROLE, client, emit, err, http, zip_of

c = client()
out = {}
z1 = zip_of({"app.py": "def handler(e, c):\n    return 'v1'\n"})
z2 = zip_of({"app.py": "import os\ndef handler(e, c):\n    return ['v2', os.environ.get('STAGE')]\n"})


def create(name, **kw):
    args = dict(FunctionName=name, Runtime="python3", Role=ROLE, Handler="app.handler",
                Code={"ZipFile": z1})
    args.update(kw)
    return c.create_function(**args)


r = create("cp", MemorySize=256, Timeout=5, Environment={"Variables": {"STAGE": "one"}},
           Description="d1")
out["create"] = {k: r.get(k) for k in ("MemorySize", "Timeout", "Environment", "Description", "State")}
out["conflict"] = err(lambda: create("cp"))
unchecked = client(validate=False)
out["bad_memory"] = err(lambda: unchecked.create_function(
    FunctionName="cp2", Runtime="python3", Role=ROLE, Handler="app.handler",
    Code={"ZipFile": z1}, MemorySize=64))
out["s3"] = err(lambda: unchecked.create_function(
    FunctionName="cp3", Runtime="python3", Role=ROLE, Handler="app.handler",
    Code={"S3Bucket": "bucket", "S3Key": "key.zip"}))
# A host path is for root clients of the socket; over HTTP it is no field.
r = http("POST", "/2015-03-31/functions", body=json.dumps({
    "FunctionName": "frompath", "Runtime": "python3", "Handler": "app.handler",
    "Code": {"Path": "/etc"}}).encode(), headers={"Content-Type": "application/json"})
out["code_path"] = {"status": r["status"], "type": r["headers"].get("x-amzn-errortype")}
g = c.get_function(FunctionName="cp")
out["get"] = {"name": g["Configuration"]["FunctionName"]}
out["get_config"] = c.get_function_configuration(FunctionName="cp")["Handler"]
create("cq")
pages = c.get_paginator("list_functions").paginate(PaginationConfig={"PageSize": 1})
out["list_pages"] = [[f["FunctionName"] for f in p["Functions"]] for p in pages]
r = c.update_function_configuration(FunctionName="cp", MemorySize=512,
                                    Environment={"Variables": {"STAGE": "two"}})
out["update_config"] = {"MemorySize": r["MemorySize"]}
out["stale_revision"] = err(lambda: c.update_function_code(
    FunctionName="cp", ZipFile=z2, RevisionId=g["Configuration"]["RevisionId"]))
rev = c.get_function(FunctionName="cp")["Configuration"]["RevisionId"]
c.update_function_code(FunctionName="cp", ZipFile=z2, RevisionId=rev)
out["after_update"] = json.loads(c.invoke(FunctionName="cp")["Payload"].read())

c.put_function_concurrency(FunctionName="cp", ReservedConcurrentExecutions=5)
out["concurrency"] = c.get_function_concurrency(FunctionName="cp").get("ReservedConcurrentExecutions")
out["get_concurrency"] = c.get_function(FunctionName="cp").get("Concurrency")
c.delete_function_concurrency(FunctionName="cp")
out["concurrency_deleted"] = c.get_function_concurrency(FunctionName="cp").get("ReservedConcurrentExecutions")

lz = zip_of({"python/greet.py": "def greet():\n    return 'from layer'\n"})
layer = c.publish_layer_version(LayerName="greet", Content={"ZipFile": lz},
                                CompatibleRuntimes=["python3"], Description="g")
out["layer"] = {"version": layer["Version"], "arn": layer["LayerVersionArn"]}
out["layers"] = [x["LayerName"] for x in c.list_layers()["Layers"]]
out["layer_versions"] = [x["Version"] for x in c.list_layer_versions(LayerName="greet")["LayerVersions"]]
out["layer_get"] = c.get_layer_version(LayerName="greet", VersionNumber=1)["Description"]
create("withlayer", Layers=[layer["LayerVersionArn"]],
       Code={"ZipFile": zip_of({"app.py": "import greet\ndef handler(e, c):\n    return greet.greet()\n"})})
out["layer_invoke"] = json.loads(c.invoke(FunctionName="withlayer")["Payload"].read())
c.delete_layer_version(LayerName="greet", VersionNumber=1)
out["layer_gone"] = err(lambda: c.get_layer_version(LayerName="greet", VersionNumber=1))

r = c.put_provisioned_concurrency_config(FunctionName="cp", Qualifier="$LATEST",
                                         ProvisionedConcurrentExecutions=1)
out["provisioned_put"] = r["RequestedProvisionedConcurrentExecutions"]
deadline = time.time() + 30
status = None
while time.time() < deadline:
    status = c.get_provisioned_concurrency_config(FunctionName="cp", Qualifier="$LATEST")["Status"]
    if status == "READY":
        break
    time.sleep(0.2)
out["provisioned_status"] = status
out["provisioned_list"] = len(c.list_provisioned_concurrency_configs(FunctionName="cp")["ProvisionedConcurrencyConfigs"])
c.delete_provisioned_concurrency_config(FunctionName="cp", Qualifier="$LATEST")
out["provisioned_gone"] = err(lambda: c.get_provisioned_concurrency_config(FunctionName="cp", Qualifier="$LATEST"))
out["account"] = c.get_account_settings()["AccountLimit"]["ConcurrentExecutions"]
cq_arn = "arn:aws:lambda:us-east-1:000000000000:function:cq"
c.put_function_event_invoke_config(FunctionName="cp", MaximumRetryAttempts=1,
                                   DestinationConfig={"OnFailure": {"Destination": cq_arn}})
c.update_function_event_invoke_config(FunctionName="cp", MaximumEventAgeInSeconds=3600)
e = c.get_function_event_invoke_config(FunctionName="cp")
out["event_config"] = {"retries": e["MaximumRetryAttempts"], "age": e["MaximumEventAgeInSeconds"],
                       "on_failure": e["DestinationConfig"]["OnFailure"]["Destination"]}
out["event_config_list"] = len(c.list_function_event_invoke_configs(FunctionName="cp")["FunctionEventInvokeConfigs"])
out["event_config_dir"] = err(lambda: c.put_function_event_invoke_config(
    FunctionName="cp", DestinationConfig={"OnFailure": {"Destination": "/tmp"}}))
c.delete_function_event_invoke_config(FunctionName="cp")
out["event_config_gone"] = err(lambda: c.get_function_event_invoke_config(FunctionName="cp"))
out["event_config_list_empty"] = len(c.list_function_event_invoke_configs(FunctionName="cp")["FunctionEventInvokeConfigs"])
c.delete_function(FunctionName="cq")
out["deleted"] = err(lambda: c.get_function(FunctionName="cq"))
emit(out)
