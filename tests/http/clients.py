"""What the tests' client scripts share: a boto3 Lambda client on the
endpoint under test (one attempt, so a refusal is seen as it is), zips made
in memory, and errors as a dict of what the SDK raised."""
import io
import json
import sys
import urllib.error
import urllib.request
import zipfile

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

BASE = sys.argv[1]
ROLE = "arn:aws:iam::000000000000:role/lambdalet"


def client(key="test", secret="test", validate=True):
    return boto3.client(
        "lambda",
        endpoint_url=BASE,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            # Off to send what the server must refuse itself.
            parameter_validation=validate,
        ),
    )


def zip_of(files):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return b.getvalue()


def err(f):
    """None if f() succeeds, else what the SDK raised."""
    try:
        f()
        return None
    except ClientError as e:
        return {
            "class": type(e).__name__,
            "code": e.response["Error"]["Code"],
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
            "message": e.response["Error"].get("Message"),
            "reason": e.response.get("Reason"),
        }


def http(method, path, body=None, headers=None):
    """A plain HTTP request with urllib; the answer as a dict."""
    r = urllib.request.Request(BASE + path, data=body, method=method, headers=headers or {})
    try:
        resp = urllib.request.urlopen(r, timeout=60)
    except urllib.error.HTTPError as e:
        resp = e
    data = resp.read()
    out = {
        "status": resp.status,
        "headers": {k.lower(): v for k, v in resp.headers.items()},
        "set_cookie": resp.headers.get_all("Set-Cookie") or [],
        "raw": data,
    }
    try:
        out["json"] = json.loads(data)
    except ValueError:
        pass
    return out


def emit(out):
    print(json.dumps(out, default=lambda b: b.decode("latin-1")))
