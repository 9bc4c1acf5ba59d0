"""searchgym.training"""
