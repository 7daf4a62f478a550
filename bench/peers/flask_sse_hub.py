"""A hub on Flask-SSE (Redis pub/sub), served as its docs say: gunicorn with gevent workers.

    REDIS_URL=redis://127.0.0.1:6379 gunicorn -k gevent bench.peers.flask_sse_hub:app
"""
import os

from flask import Flask, jsonify, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish():
    sse.publish(request.get_data(as_text=True), type="message")
    return jsonify(ok=True), 201


@app.get("/healthz")
def healthz():
    return jsonify(ok=True)
