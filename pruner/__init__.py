"""coinfer.pruner"""
