"""What several test files share (fixtures are registered in ``tests/conftest.py``)."""
