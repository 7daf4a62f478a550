"""A hub on sse-starlette + uvicorn: an asyncio.Queue per subscriber (the usual design)."""
import argparse
import asyncio

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

subscribers: set[asyncio.Queue] = set()


async def publish(request: Request):
    body = (await request.body()).decode()
    for q in subscribers:
        q.put_nowait(body)
    return JSONResponse({"ok": True}, status_code=201)


async def stream(request: Request):
    q: asyncio.Queue = asyncio.Queue()
    subscribers.add(q)

    async def events():
        try:
            while True:
                yield {"event": "message", "data": await q.get()}
        finally:
            subscribers.discard(q)

    return EventSourceResponse(events(), ping=15)


async def healthz(request: Request):
    return JSONResponse({"ok": True, "subscribers": len(subscribers)})


app = Starlette(routes=[Route("/publish", publish, methods=["POST"]), Route("/stream", stream),
                        Route("/healthz", healthz)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)
