"""Generated gRPC and protobuf stubs of flowtrack.v1 (scripts/gen_protos.py). Do not edit."""
