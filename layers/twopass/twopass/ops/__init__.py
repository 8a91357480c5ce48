"""Operator tools: dead-letter sweeping and redrive."""
