"""Function URLs with a plain HTTP client (urllib): methods, query strings,
cookies both ways, binary bodies, a bare JSON result, malformed results and
function errors."""
import json

from clients import ROLE, client, emit, http, zip_of

APP = '''
import base64, json
def handler(event, context):
    path = event["rawPath"]
    if path == "/bare":
        return {"bare": True, "method": event["requestContext"]["http"]["method"]}
    if path == "/malformed":
        return {"statusCode": "teapot"}
    if path == "/fail":
        raise RuntimeError("boom")
    if path == "/binary":
        data = base64.b64decode(event["body"]) if event["isBase64Encoded"] else b""
        return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(bytes(reversed(data))).decode(), "isBase64Encoded": True}
    return {"statusCode": 201, "headers": {"content-type": "application/json", "x-echo": "yes"},
            "cookies": ["session=abc; Path=/", "theme=dark"], "body": json.dumps(event)}
'''

c = client()
c.create_function(FunctionName="web", Runtime="python3", Role=ROLE, Handler="app.handler",
                  Code={"ZipFile": zip_of({"app.py": APP})}, Timeout=10)
out = {}


def echo(method, path, body=None, headers=None):
    r = http(method, path, body, headers)
    r["event"] = r.pop("json", None)
    r.pop("raw")
    return r


out["get"] = echo("GET", "/url/web/items/7?a=1&a=2&b=x%20y",
                  headers={"Cookie": "c1=v1; c2=v2", "X-Custom": "Hi"})
out["post"] = echo("POST", "/url/web/items", body=b'{"k": "v"}',
                   headers={"Content-Type": "application/json"})
out["methods"] = {m: echo(m, "/url/web/m")["event"]["requestContext"]["http"]["method"]
                  for m in ("PUT", "DELETE", "PATCH")}
out["root"] = echo("GET", "/url/web")
payload = bytes(range(256)) * 4
r = http("POST", "/url/web/binary", body=payload,
         headers={"Content-Type": "application/octet-stream"})
out["binary"] = {"status": r["status"], "headers": r["headers"],
                 "ok": r["raw"] == bytes(reversed(payload))}
r = http("GET", "/url/web/bare")
out["bare"] = {"status": r["status"], "headers": r["headers"], "json": r.get("json")}
out["malformed"] = {"status": http("GET", "/url/web/malformed")["status"]}
out["fail"] = {"status": http("GET", "/url/web/fail")["status"]}
out["missing"] = {"status": http("GET", "/url/nosuchfunction/x")["status"]}
emit(out)
