"""Decision: acquisition, feasibility, Pareto and multi-fidelity choice, and the agent policies."""
