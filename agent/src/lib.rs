//! Shoal node agent (engine driver and task runner); built out by the agent engine issue.
