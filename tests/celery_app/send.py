"""Publish one task with Celery's own client; print its id. Used by tests as the reference producer.

usage: python send.py TASK QUEUE ARGS_JSON KWARGS_JSON   (broker from CELERY_BROKER_URL)
"""
import json
import sys

from kb_worker import app

task, queue, args, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
result = app.send_task(task, args=args, kwargs=kwargs, queue=queue)
print(result.id)
