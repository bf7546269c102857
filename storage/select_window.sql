-- Sol-RL selection (docs/algorithm.md, "Selection"), reference form: per prompt, over candidates with a finite
-- proxy reward, the K/2 highest and the K/2 lowest. Ties are broken by seed ascending, so the
-- result is a pure function of the explore rows. proxy_rank is the 1-based rank by reward
-- descending. Parameters: $half (= K/2). The input relation is named `explore`.
--
-- This window query defines the result. select.sql computes the same table faster (top-N
-- aggregates instead of a full sort); storage.selection uses this one for inputs the fast path
-- does not take (NULL prompt_id or seed, non-float rewards), and tests/test_selection_sql.py
-- checks the two agree row for row.
WITH finite AS (
    SELECT prompt_id, prompt, seed, reward
    FROM explore
    WHERE isfinite(reward)
),
ranked AS (
    SELECT
        prompt_id, prompt, seed, reward,
        row_number() OVER (PARTITION BY prompt_id ORDER BY reward DESC, seed ASC) AS proxy_rank,
        count(*) OVER (PARTITION BY prompt_id) AS n_finite
    FROM finite
)
SELECT
    CAST(prompt_id AS INTEGER) AS prompt_id,
    prompt,
    CAST(seed AS BIGINT) AS seed,
    CASE WHEN proxy_rank <= $half THEN 'top' ELSE 'bottom' END AS side,
    CAST(proxy_rank AS INTEGER) AS proxy_rank,
    CAST(reward AS DOUBLE) AS proxy_reward
FROM ranked
WHERE proxy_rank <= $half OR proxy_rank > n_finite - $half
ORDER BY prompt_id, proxy_rank
