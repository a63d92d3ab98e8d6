"""Procedural imaging phantoms with exact label maps, for demo-weight training and acceptance tests."""
