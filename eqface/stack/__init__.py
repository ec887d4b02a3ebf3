"""The local stack: Triton, the aggregation service and Prometheus on one machine (``eqface stack``), and the readers
of ``manifests/`` that it and the tests share."""
