"""The rules of flowtrack: status ordering, validation, stats maths. No grpc, no SQL."""
