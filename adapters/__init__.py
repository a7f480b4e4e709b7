"""The outside world behind one Oracle interface: local models and cloud APIs."""
