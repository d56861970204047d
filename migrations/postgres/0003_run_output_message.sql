-- The whole assistant message of a completed run: its tool calls (a JSON array in the
-- OpenAI shape), its refusal, and the provider's own finish value beside the normalised
-- `finish_reason`. `output_content` may now be NULL on a completed run that answered with
-- tool calls only. Rows written before stay readable: the new columns are NULL there.
ALTER TABLE runs
    ADD COLUMN output_tool_calls jsonb,
    ADD COLUMN output_refusal    text,
    ADD COLUMN raw_finish_reason text;
