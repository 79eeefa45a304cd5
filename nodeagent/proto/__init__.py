"""The gRPC contract of proto/baponi/agent/v1, as committed stubs (scripts/gen_protos.py).

Both ends use the same channel options: a home archive travels in one message, so the
message limit is far above gRPC's 4 MiB default.
"""

MAX_MESSAGE_BYTES = 1 << 30
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
