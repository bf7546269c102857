-- Sol-RL selection (docs/algorithm.md, "Selection"): per prompt, over candidates with a finite proxy reward,
-- the K/2 highest and the K/2 lowest. Ties are broken by seed ascending, so the result is a pure
-- function of the explore rows. proxy_rank is the 1-based rank by reward descending.
--
-- select_window.sql states this as one window query (row_number over the whole prompt). These
-- two queries give the same table without sorting every candidate: DuckDB's top-N aggregates
-- (max_by / min_by with n) keep a small heap per prompt. Their ordering key must be one number
-- (a composite or struct key falls back to a much slower generic path), so they order by reward
-- alone and storage/selection.py settles reward ties by seed:
--   per_prompt  one pass over the rows: per prompt the counts and the row numbers `i` of the
--               $n = K/2 + 1 highest and lowest finite rewards, each list in reward order. One
--               more than K/2, so a tie across the K/2 boundary shows (reward K/2 = reward K/2+1).
--   ties        only for prompts with such a boundary tie: among the rows with the boundary
--               reward, those with the smallest seeds (top side) and the largest seeds (bottom
--               side: the last ranks), as many as the side still needs.
-- The input relation `explore` has prompt_id, seed, reward and i (the row number); `ties` has
-- prompt_id, top_r / bottom_r (the boundary reward, NULL when that side has no boundary tie) and
-- top_need / bottom_need.

-- name: per_prompt
SELECT
    prompt_id,
    count(*) AS n_rows,
    count(r) AS n_finite,
    max_by(i, r, $n) AS top_i,
    min_by(i, r, $n) AS bottom_i
FROM (SELECT prompt_id, i, CASE WHEN isfinite(reward) THEN reward END AS r FROM explore)
GROUP BY prompt_id
ORDER BY prompt_id;

-- name: ties
SELECT
    t.prompt_id,
    list_slice(min_by(e.i, e.seed, $half) FILTER (WHERE e.reward = t.top_r), 1, t.top_need) AS top_i,
    list_slice(max_by(e.i, e.seed, $half) FILTER (WHERE e.reward = t.bottom_r), 1, t.bottom_need) AS bottom_i
FROM explore AS e
JOIN ties AS t ON e.prompt_id = t.prompt_id
WHERE e.reward = t.top_r OR e.reward = t.bottom_r
GROUP BY t.prompt_id, t.top_need, t.bottom_need
ORDER BY t.prompt_id;
