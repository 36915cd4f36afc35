"""coinfer.planner"""
