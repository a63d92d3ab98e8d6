"""Video streams over WebSocket: the protocol, per-stream sessions and their bound."""
