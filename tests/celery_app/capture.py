"""Publish one task with Celery's own apply_async and the message options kube-beat supports
(exchange, routing_key, headers, time_limit, soft_time_limit, ignore_result), then read the
message back from the broker and print it as JSON. The reference for kube-beat's own messages.

usage: python capture.py OPTIONS_JSON   (broker from CELERY_BROKER_URL)
OPTIONS_JSON: {"task", "id", "queue", "args", "kwargs", "exchange", "routing_key", "headers",
               "time_limit", "soft_time_limit", "ignore_result", "read": <list or queue to read>, "send": false to only read}
Redis: prints the raw envelope (the list's value) as a JSON string. AMQP: prints the message read
with basic_get: exchange, routing key, properties, headers with each value's Python type (py-amqp
decodes AMQP type tags into them), and the raw body.
"""
import json
import sys

from kb_worker import app

opts = json.loads(sys.argv[1])
call = {"task_id": opts["id"], "queue": opts["queue"]}
for k in ("exchange", "routing_key", "headers", "time_limit", "soft_time_limit", "ignore_result"):
    if opts.get(k) is not None:
        call[k] = opts[k]
if opts.get("bind") and not app.conf.broker_url.startswith("redis"):
    # AMQP: the exchange and the queue it routes to must exist for the message to be kept.
    from kombu import Exchange, Queue

    with app.connection_for_write() as conn:
        Queue(opts["read"], Exchange(opts["exchange"], "direct"), routing_key=opts["routing_key"])(
            conn.default_channel
        ).declare()
# apply_async, not send_task: send_task writes `ignore_result: null`.
task = app.tasks[opts["task"]]
if opts.get("send", True):
    task.apply_async(args=opts.get("args", []), kwargs=opts.get("kwargs", {}), **call)


def typed(v):
    if isinstance(v, bool):
        return ["bool", v]
    if isinstance(v, int):
        return ["int", v]
    if isinstance(v, float):
        return ["float", v]
    if v is None:
        return ["none", None]
    if isinstance(v, (bytes, bytearray)):
        return ["bytes", bytes(v).decode()]
    if isinstance(v, str):
        return ["str", v]
    if isinstance(v, (list, tuple)):
        return ["list", [typed(x) for x in v]]
    if isinstance(v, dict):
        return ["dict", [[k, typed(x)] for k, x in v.items()]]
    return ["other", repr(v)]


url = app.conf.broker_url
if url.startswith("redis"):
    import redis

    r = redis.Redis.from_url(url)
    raw = r.rpop(opts["read"])
    print(json.dumps({"envelope": raw.decode() if raw is not None else None}))
else:
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        msg = ch.basic_get(opts["read"], no_ack=True)
        if msg is None:
            print(json.dumps({"message": None}))
        else:
            props = dict(msg.properties)
            headers = props.pop("application_headers", {})
            print(json.dumps({"message": {
                "exchange": msg.delivery_info.get("exchange"),
                "routing_key": msg.delivery_info.get("routing_key"),
                "properties": {k: typed(v) for k, v in props.items()},
                "headers": [[k, typed(v)] for k, v in headers.items()],
                "body": msg.body.decode() if isinstance(msg.body, (bytes, bytearray)) else msg.body,
            }}))
