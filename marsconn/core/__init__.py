"""What the plan half and the run half share; imports nothing of either."""
