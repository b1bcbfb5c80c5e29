"""Delivery: a claimed delivery in, an Outcome out, for every destination type.

- base.py: the Outcome, shared error codes, schemas, the Provider and Publisher protocols.
- registry.py: the types relay knows, one line each (module, pip extra).
- pool.py: the dispatcher's door (``Deliverer``): publishers pooled per destination,
  timeouts around them, all closed when the dispatcher stops.
- webhook.py, hookdeck.py, rabbitmq.py, aws_sqs.py, aws_kinesis.py, aws_s3.py,
  gcp_pubsub.py, azure_servicebus.py, kafka.py, and relay's own nats_jetstream.py and
  redis_streams.py: the types that deliver; schemas/<type>.json
  describes every type (what ``/destination-types`` answers and validation reads). aws.py:
  what the AWS types share (their aiobotocore client, error codes); keytemplates.py:
  Outpost's JMESPath key templates (Kinesis and kafka partition keys, S3 object keys).

Adding a type (say ``aws_sqs``, whose schema is already here):

1. ``relay/delivery/aws_sqs.py``: a Provider subclass for what the schema cannot say
   (Outpost's per-type Validate/Preprocess/ComputeTarget: ``problems``, ``normalise``,
   ``verify``, ``target``) and a Publisher (``deliver(claimed) -> Outcome`` from
   ``claimed.config``/``credentials``/``body``/``make_metadata``; ``close()``), its
   errors mapped to Outpost's codes; ``PROVIDER = AwsSqsProvider(registry.schema(...))``.
   The client library is imported at the top of that module only.
2. ``schemas/aws_sqs.json`` (a new type: Outpost's metadata.json facts, relay's words).
3. registry.py: ``"aws_sqs": Entry("relay.delivery.aws_sqs", "aws")``.
4. pyproject.toml: the ``aws`` extra, added to ``all`` and ``test``.
5. ``tests/integration/test_destination_aws_sqs.py``: a ``Broker`` for the real server or
   emulator and ``class TestAwsSqs(DestinationContract)`` (tests/support/contract.py),
   plus what is particular to the type; the README's table of types.
"""
