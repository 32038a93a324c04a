"""Publishing: the dataset repo (Hub or local folder), the dataset card, the charts, and one consistent publication."""
