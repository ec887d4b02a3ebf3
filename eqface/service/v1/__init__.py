"""Generated gRPC stubs of ``eqface.service.v1`` (regenerate with ``scripts/gen_protos.sh``; do not edit them)."""
