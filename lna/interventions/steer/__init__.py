"""lna-steer, in parts: run (the command: settings and the steps of a run), experts (the same
on a mixture-of-experts model), session (generation, perplexities, resume), judge
(each output's language, degeneracy and perplexity; "fluent in the target"), methods (the
interventions), search (the smallest strength reaching a share) and table (steer.json,
.csv, .md, .png)."""
