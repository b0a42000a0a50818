"""llmos.kernel"""
