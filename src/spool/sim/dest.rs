//! A simulated Kafka for the forwarder: per record, by the seed, it stores, fails retryably
//! (and then takes nothing more of that key in the call, as a partition of an idempotent
//! producer), refuses for good (a record it refuses, it always refuses), or fails ambiguously
//! (stored, but reported as a timeout, as a produce whose acknowledgement was lost); it is up
//! or down; its dead-letter topic takes records or not. What it stores lands in an order that interleaves keys at random but keeps each
//! key's records in the order of the call, as a Kafka partition does. Results may be held
//! back for a while (a stall), so a crash can fall between storing and the forwarder hearing.
use crate::core::delivery::Stored;
use crate::core::error::Error;
use crate::spool::Record;

use super::Rng;

/// How the simulated broker behaves for a stretch of a schedule (rates out of 100).
#[derive(Clone, Copy, Debug, Default)]
pub struct Mood {
    pub down: bool,
    pub fail: u64,
    pub refuse: u64,
    pub ambiguous: u64,
    pub stall_ms: u64,
    pub dead_letter: bool,
    pub dead_letter_fail: u64,
}

#[derive(Default)]
pub struct SimDest {
    /// The topic: event ids in the order stored, with their ordering key.
    pub log: Vec<(String, Option<String>)>,
    pub dead_letters: Vec<String>,
    pub mood: Mood,
    /// Records stored but reported failed (each may be sent again: a duplicate).
    pub ambiguous: u64,
    /// Whether the broker refuses a record for good, decided when it is first sent.
    poisoned: std::collections::HashMap<String, bool>,
    pub sends: u64,
}

fn stored() -> Result<Stored, Error> {
    Ok(Stored {
        partition: 0,
        offset: 0,
    })
}

impl SimDest {
    pub fn send(
        &mut self,
        rng: &mut Rng,
        records: &[Record],
        keys: &[Option<String>],
    ) -> Vec<Result<Stored, Error>> {
        self.sends += 1;
        let mut results = Vec::with_capacity(records.len());
        let mut landed: Vec<usize> = Vec::new();
        // Keys with a record that failed retryably in this call: the broker (one producer's
        // partition) takes nothing of that key after it, as Kafka's idempotent producer
        // keeps a partition's order.
        let mut blocked: Vec<&Option<String>> = Vec::new();
        for i in 0..records.len() {
            let m = self.mood;
            let id = &records[i].event.id;
            // A record the broker refuses, it refuses every time (too large, invalid).
            let poisoned = match self.poisoned.get(id) {
                Some(&p) => p,
                None => {
                    let p = rng.below(100) < m.refuse;
                    self.poisoned.insert(id.clone(), p);
                    p
                }
            };
            let roll = rng.below(100);
            let key_blocked = keys[i].is_some() && blocked.contains(&&keys[i]);
            let r = if poisoned {
                Err(Error::Internal("simulated: INVALID_RECORD".into()))
            } else if key_blocked || roll < m.fail {
                blocked.push(&keys[i]);
                Err(Error::unavailable("simulated: not enough replicas"))
            } else if roll < m.fail + m.ambiguous {
                self.ambiguous += 1;
                landed.push(i);
                Err(Error::unavailable(
                    "simulated: timed out (written after all)",
                ))
            } else {
                landed.push(i);
                stored()
            };
            results.push(r);
        }
        // Keys land interleaved at random; one key's records keep their order.
        while !landed.is_empty() {
            let pick = landed[rng.below(landed.len() as u64) as usize];
            let key = &keys[pick];
            let i = match key {
                Some(_) => *landed
                    .iter()
                    .find(|&&j| keys[j] == *key)
                    .expect("the picked key is there"),
                None => pick,
            };
            landed.retain(|&j| j != i);
            self.log
                .push((records[i].event.id.clone(), keys[i].clone()));
        }
        results
    }

    /// None: no dead-letter topic.
    pub fn dead_letter(&mut self, rng: &mut Rng, record: &Record) -> Option<Result<Stored, Error>> {
        if !self.mood.dead_letter {
            return None;
        }
        if self.mood.down || rng.below(100) < self.mood.dead_letter_fail {
            return Some(Err(Error::unavailable("simulated: dead-letter topic away")));
        }
        self.dead_letters.push(record.event.id.clone());
        Some(stored())
    }
}
