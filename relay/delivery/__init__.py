"""Delivery: a claimed delivery in, an Outcome out, for every destination type.

- base.py: the Outcome, shared error codes, schemas, the Provider and Publisher protocols.
- registry.py: the types relay knows, one line each (module, pip extra).
- pool.py: the dispatcher's door (``Deliverer``): publishers pooled per destination,
  timeouts around them, all closed when the dispatcher stops.
- webhook.py, hookdeck.py, rabbitmq.py: the types that deliver; schemas/<type>.json
  describes every type (what ``/destination-types`` answers and validation reads).
"""
