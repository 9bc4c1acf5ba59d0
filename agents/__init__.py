"""searchgym.agents"""
