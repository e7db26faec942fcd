"""Partner profiles: who each partner is, its tier, its channels, and what it may see."""
