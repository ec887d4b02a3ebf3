"""The gRPC aggregation service: progressive QWFA templates per face stream (paper section 5.3) and 1:N identification.

Run it with ``python -m eqface.service --help``. The proto is ``proto/eqface/service/v1/aggregator.proto``; its
generated stubs live in ``eqface.service.v1``.
"""
