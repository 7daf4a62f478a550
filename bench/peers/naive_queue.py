"""The naive design: Flask + gevent, a bounded queue per client, events dropped when it is full.

    gunicorn -k gevent bench.peers.naive_queue:app
"""
import queue

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
clients: set[queue.Queue] = set()   # gevent patches queue.Queue into a cooperative one


@app.post("/publish")
def publish():
    body = request.get_data(as_text=True)
    for q in list(clients):
        try:
            q.put_nowait(body)
        except queue.Full:
            pass                       # the naive answer to a slow client: drop
    return jsonify(ok=True), 201


@app.get("/stream")
def stream():
    q: queue.Queue = queue.Queue(maxsize=100)
    clients.add(q)

    def frames():
        try:
            while True:
                try:
                    yield f"data: {q.get(timeout=15)}\n\n"
                except queue.Empty:
                    yield ": ping\n\n"
        finally:
            clients.discard(q)

    return Response(frames(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.get("/healthz")
def healthz():
    return jsonify(ok=True, subscribers=len(clients))
