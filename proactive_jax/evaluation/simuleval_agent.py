"""A SimulEval (1.1.x) text-to-text agent on :class:`.session.StreamSession` (the ``simuleval`` extra).

    simuleval --agent-class proactive_jax.evaluation.simuleval_agent.ProactiveAgent \\
        --source src.txt --target tgt.txt --checkpoint CKPT --head wait-k:k=3 --output OUT

SimulEval sends the source one word per call (``states.source``) and records, for every target word the
agent returns, the number of source words sent so far. The agent pushes each new word into the session
(tokenized on its own, with a leading space after the first, exactly as offline rendering does), calls
``finish()`` once SimulEval marks the source finished, and returns the words completed since the last
call (detokenized, whitespace-joined; the end-of-turn token and words that detokenize to nothing, such
as ids past the tokenizer's vocabulary, dropped).

When a word is complete (ours): a target word is the run of tokens from a word-starting token (its text
starts with whitespace; the first token always starts one) to the next. At a call, every word followed
by a written token is complete; the last written word is complete too if the session is closed or done,
or if the pending candidate (the token the model would write next) starts a word or ends the turn. So a
word is returned at the read count of its last token, which is the project's word delay
(:func:`proactive_jax.evaluation.metrics.word_delays`); the two differ only if a READ turns a pending
word-starting candidate into a continuation (the continuation is then returned as a word of its own).
"""

from __future__ import annotations

import logging

from simuleval.agents import TextToTextAgent
from simuleval.agents.actions import ReadAction, WriteAction

from proactive_jax.method.session import StreamSession

log = logging.getLogger(__name__)


class ProactiveAgent(TextToTextAgent):
    """SimulEval agent: a checkpoint with any decision head, streamed through a live session."""

    def __init__(self, args):
        from transformers import AutoTokenizer

        from proactive_jax.training.loading import load_model

        self.config, self.params, tok_dir = load_model(args.checkpoint, args.step)
        tok_dir = args.tokenizer or tok_dir
        if tok_dir is None:
            raise ValueError(f"no tokenizer found for {args.checkpoint}; pass --tokenizer DIR")
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        self.session: StreamSession | None = None
        self.emitted = 0  # tokens already returned to SimulEval
        self.finished_sessions: list[StreamSession] = []
        super().__init__(args)

    @staticmethod
    def add_args(parser):
        parser.add_argument("--checkpoint", required=True, help="HF directory or training run directory")
        parser.add_argument("--step", type=int, default=None, help="training-run step (default: latest)")
        parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
        parser.add_argument("--head", default="wait-k:k=3", help="decision head spec, e.g. entropy:tau=0.3")
        parser.add_argument("--prompt", default="", help="task text shown up front (instruction)")
        parser.add_argument("--system", default=None, help="system message for the chat template")
        parser.add_argument("--max-new-tokens", type=int, default=128)
        parser.add_argument("--max-source-len", type=int, default=None, help="source tokens per sentence")
        parser.add_argument("--unit-capacity", type=int, default=8, help="tokens per source word, at most")

    def reset(self) -> None:
        super().reset()
        if self.session is not None:
            self.finished_sessions.append(self.session)
        self.session, self.emitted = None, 0

    def _new_session(self) -> StreamSession:
        a = self.args
        return StreamSession.from_tokenizer(self.config, self.params, a.head, self.tokenizer, prompt_text=a.prompt,
                                            system=a.system, max_new_tokens=a.max_new_tokens,
                                            max_source_len=a.max_source_len, unit_capacity=a.unit_capacity)

    def _complete(self) -> int:
        """Number of written tokens that form complete words (see the module doc)."""
        s = self.session
        toks, ws, eos = s.tokens, s.word_starts, set(s.eos_ids)
        body = len(toks) - (1 if toks and toks[-1] in eos else 0)
        if s.closed or s.done:
            return len(toks)
        cand = s.pending_token
        if cand in eos or ws[cand]:
            return body
        starts = [t for t in range(1, body) if ws[toks[t]]]
        return starts[-1] if starts else 0

    def _words(self, start: int, stop: int) -> list[str]:
        s = self.session
        toks = [t for t in s.tokens[start:stop] if t not in set(s.eos_ids)]
        words, cur = [], []
        for k, t in enumerate(toks):
            if cur and s.word_starts[t]:
                words.append(cur)
                cur = []
            cur.append(t)
        if cur:
            words.append(cur)
        out = [self.tokenizer.decode(w, skip_special_tokens=True).strip() for w in words]
        return [w for w in out if w]

    def policy(self):
        if self.session is None:
            self.session = self._new_session()
        s, src = self.session, self.states.source
        while s.units_pushed < len(src) and not s.closed:
            word = src[s.units_pushed]
            if word.strip():
                s.push_text(word)
            else:  # an empty source word (double space): count it, feed nothing
                raise ValueError(f"source word {s.units_pushed} is empty; SimulEval split the line on a double space")
        if self.states.source_finished and not s.closed:
            s.finish()
        stop = self._complete()
        words = self._words(self.emitted, stop)
        self.emitted = stop
        finished = s.closed or s.done
        if words or finished:
            return WriteAction(" ".join(words), finished=finished)
        return ReadAction()
