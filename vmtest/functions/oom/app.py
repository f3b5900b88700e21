"""Allocates (and touches) far more than its memory limit: must be OOM-killed."""


def handler(event, context):
    mb = int(event.get("mb", 512))
    chunks = []
    for _ in range(mb // 16):
        # bytes * n writes every byte, so every page is really charged.
        chunks.append(b"\x01" * (16 << 20))
    return {"survived_mb": 16 * len(chunks)}
