"""The smallest Lambda handler: `make run` deploys it as `hello`."""

import os

# Init code runs once per environment (the init phase); invokes reuse it.
GREETING = os.environ.get("GREETING", "Hello")


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    print(f"greeting {name} from {context.function_name}")
    return {
        "message": f"{GREETING}, {name}!",
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
