"""Publish one task with Celery's own client; print its id. Used by tests as the reference producer.

usage: python send.py TASK QUEUE ARGS_JSON KWARGS_JSON [TASK_ID [HEADERS_JSON]]
(broker from CELERY_BROKER_URL). With TASK_ID and HEADERS_JSON it sends a copy of a message
already sent (same id, same headers): what a broker redelivery hands the worker again.
"""
import json
import sys

from kb_worker import app

task, queue, args, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
options = {}
if len(sys.argv) > 5:
    options["task_id"] = sys.argv[5]
if len(sys.argv) > 6:
    options["headers"] = json.loads(sys.argv[6])
result = app.send_task(task, args=args, kwargs=kwargs, queue=queue, **options)
print(result.id)
