"""The model matrix: models side by side on one frozen eval set of recorded states, scored from their raw
text, timed per call, plus short closed-loop chaos runs; rows that cannot be compared are refused or marked.
"""
