"""llmos.sim"""
