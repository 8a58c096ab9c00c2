"""Sets up a moto S3 server with auth on for e2e/tests/store.rs.

usage: moto_setup.py ENDPOINT BUCKET KEY FILE
Creates an IAM user with an allow-all policy and an access key (the server's
first unauthenticated actions), then, signed with that key, the bucket and
the object from FILE. Prints "ACCESS_KEY_ID SECRET".
"""
import sys
import boto3

endpoint, bucket, key, path = sys.argv[1:5]
anon = dict(endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **anon)
iam.create_user(UserName="damselfly")
iam.put_user_policy(UserName="damselfly", PolicyName="all",
                    PolicyDocument='{"Version":"2012-10-17","Statement":'
                    '[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
k = iam.create_access_key(UserName="damselfly")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=k["AccessKeyId"],
                  aws_secret_access_key=k["SecretAccessKey"])
s3.create_bucket(Bucket=bucket)
with open(path, "rb") as f:
    s3.put_object(Bucket=bucket, Key=key, Body=f.read())
print(k["AccessKeyId"], k["SecretAccessKey"])
