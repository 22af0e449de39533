"""S3-protocol test server for tests/s3.rs: moto's server on 127.0.0.1 with a free port.

Credentials are enforced: the first three requests (unauthenticated) create an IAM user, its
access key and a policy; every later request must be signed with that key, so a test can
check what a wrong key does. Prints one JSON line (endpoint, key, bucket) and serves until
its standard input closes, i.e. until the test process that started it exits.
"""
import json
import os
import sys

os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

BUCKET = sys.argv[1] if len(sys.argv) > 1 else "audit-export"

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
endpoint = f"http://{host}:{port}"

anonymous = dict(endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **anonymous)
iam.create_user(UserName="audit-transfer-test")
key = iam.create_access_key(UserName="audit-transfer-test")["AccessKey"]
iam.put_user_policy(
    UserName="audit-transfer-test",
    PolicyName="everything",
    PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
)
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"],
                  aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket=BUCKET)

print(json.dumps({"endpoint": endpoint, "key_id": key["AccessKeyId"],
                  "secret": key["SecretAccessKey"], "bucket": BUCKET}), flush=True)
sys.stdin.read()
os._exit(0)
