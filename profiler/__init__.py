"""coinfer.profiler"""
