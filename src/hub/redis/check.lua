-- The listener's periodic check. -> {epoch, seq, rotated}
local epoch, seq, rotated = verify()
return {epoch, seq, rotated}
