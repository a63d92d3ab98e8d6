"""What the routes do, as plain async functions: bytes in, label maps and their encodings out.
No BentoML here; services/service.py wires them to routes."""
