"""Who may call the aggregation service: TLS and mutual TLS, bearer tokens, roles per method, the caller's tenant."""
