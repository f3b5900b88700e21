"""boto3 against the Invoke API: sync with a tail log and client context, by
ARN, a function error, Event, DryRun, and the named exceptions."""
import base64
import json

from clients import ROLE, client, emit, err, zip_of

APP = '''
import json
def handler(event, context):
    if isinstance(event, dict) and event.get("fail"):
        raise ValueError("bad input")
    print("event-marker", json.dumps(event))
    cc = context.client_context
    return {"echo": event, "custom": cc.custom if cc else None,
            "request_id": context.aws_request_id}
'''

c = client()
out = {}
r = c.create_function(FunctionName="echo", Runtime="python3", Role=ROLE,
                      Handler="app.handler", Code={"ZipFile": zip_of({"app.py": APP})},
                      Timeout=10)
out["create"] = {"arn": r["FunctionArn"], "status": r["ResponseMetadata"]["HTTPStatusCode"]}
ctx = base64.b64encode(json.dumps({"custom": {"source": "boto3"}}).encode()).decode()
r = c.invoke(FunctionName="echo", Payload=json.dumps({"n": 1}), LogType="Tail", ClientContext=ctx)
out["sync"] = {
    "status": r["StatusCode"],
    "payload": json.loads(r["Payload"].read()),
    "log": base64.b64decode(r["LogResult"]).decode(),
    "version": r["ExecutedVersion"],
    "function_error": r.get("FunctionError"),
    "request_id_header": r["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid"),
}
r = c.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:echo",
             Qualifier="$LATEST", Payload=b"[1,2]")
out["arn"] = json.loads(r["Payload"].read())
r = c.invoke(FunctionName="echo", Payload=json.dumps({"fail": True}))
out["fail"] = {"status": r["StatusCode"], "function_error": r.get("FunctionError"),
               "payload": json.loads(r["Payload"].read())}
r = c.invoke(FunctionName="echo", InvocationType="Event", Payload=json.dumps({"async": "yes-async"}))
out["event"] = {"status": r["StatusCode"]}
out["dryrun"] = c.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"]
out["missing"] = err(lambda: c.invoke(FunctionName="nope"))
out["qualifier"] = err(lambda: c.invoke(FunctionName="echo", Qualifier="prod"))
out["not_json"] = err(lambda: c.invoke(FunctionName="echo", Payload=b"{not json"))
out["too_large"] = err(lambda: c.invoke(FunctionName="echo", Payload=json.dumps("x" * 7_000_000)))
out["event_too_large"] = err(lambda: c.invoke(FunctionName="echo", InvocationType="Event",
                                              Payload=json.dumps("x" * 2_000_000)))
c.create_function(FunctionName="capped", Runtime="python3", Role=ROLE, Handler="app.handler",
                  Code={"ZipFile": zip_of({"app.py": APP})})
c.put_function_concurrency(FunctionName="capped", ReservedConcurrentExecutions=0)
out["throttled"] = err(lambda: c.invoke(FunctionName="capped"))
emit(out)
