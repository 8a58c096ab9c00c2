//! A token bucket shared by every transfer in one direction.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct RateLimiter {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            state: Mutex::new((rate as f64, Instant::now())),
        }
    }

    /// Waits until `bytes` may pass.
    pub async fn acquire(&self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().expect("rate lock");
            let now = Instant::now();
            let burst = self.rate as f64; // one second of burst
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate as f64).min(burst);
            s.1 = now;
            s.0 -= bytes as f64;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.rate as f64)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_throughput() {
        let r = RateLimiter::new(1000);
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            r.acquire(100).await; // 3000 bytes at 1000/s with 1000 of burst
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        let unlimited = RateLimiter::new(0);
        unlimited.acquire(usize::MAX).await;
    }
}
