"""With --http-credentials: requests signed with them pass; another secret,
an unknown key, an unsigned request and a tampered body are refused."""
import json
import urllib.request

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from clients import BASE, ROLE, client, emit, err, http, zip_of

KEY, SECRET = "AKIDLAMBDALET", "secret-for-tests"
good = client(KEY, SECRET)
out = {}
r = good.create_function(FunctionName="authfn", Runtime="python3", Role=ROLE, Handler="app.handler",
                         Code={"ZipFile": zip_of({"app.py": "def handler(e, c):\n    return {'ok': True}\n"})})
out["created"] = r["FunctionName"]
out["invoked"] = json.loads(good.invoke(FunctionName="authfn")["Payload"].read())
# An ARN in the path (":" percent-encoded, so signed double-encoded) and a query.
out["invoked_arn"] = json.loads(good.invoke(
    FunctionName="arn:aws:lambda:us-east-1:000000000000:function:authfn",
    Qualifier="$LATEST")["Payload"].read())
out["wrong_secret"] = err(lambda: client(KEY, "not-the-secret").list_functions())
out["unknown_key"] = err(lambda: client("AKIDSTRANGER", SECRET).list_functions())
out["unsigned"] = http("GET", "/2015-03-31/functions/")["status"]
out["unsigned_url"] = http("GET", "/url/authfn/")["status"]


def signed(method, path, body=b"", tamper=False):
    req = AWSRequest(method=method, url=BASE + path, data=body)
    SigV4Auth(Credentials(KEY, SECRET), "lambda", "us-east-1").add_auth(req)
    headers = dict(req.prepare().headers)
    if tamper:
        body = body.replace(b"1", b"2")  # same length, other content
    return http(method, path, body=body or None, headers=headers)["status"]


out["signed_url"] = signed("GET", "/url/authfn/hello?x=1")
out["tampered"] = signed("POST", "/2015-03-31/functions/authfn/invocations", b'{"n":1}', tamper=True)
emit(out)
