"""Fault-injection tests, one module a topic (README of each in its docstring)."""
