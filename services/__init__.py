"""llmos.services"""
