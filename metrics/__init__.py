"""searchgym.metrics"""
