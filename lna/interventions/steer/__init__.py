"""lna-steer, in parts: run (the command: settings, generation, perplexities, resume), judge
(each output's language, degeneracy and perplexity; "fluent in the target"), methods (the
interventions), search (the smallest strength reaching a share) and table (steer.json,
.csv, .md, .png)."""
